//! One decision for tests that need something of the machine (a Docker engine, `python3`,
//! network namespaces): skip outside CI, fail under CI.
//!
//! Under CI (`CI=true` or `CI=1`, which `.ci/run` exports) a test that cannot run **fails**
//! with the reason: a green CI run has run every test for real. Elsewhere (a laptop without
//! Docker) the test is skipped and says so on stderr in one line that starts with
//! [`SKIP_PREFIX`], so a run's skips can be counted (`.ci/run` counts them in nextest's JUnit
//! report and fails when there is any).
//!
//! ```no_run
//! # fn docker_reachable() -> Result<(), String> { Ok(()) }
//! if !berth_testkit::skip::require("my_docker_test", docker_reachable()) {
//!     return;
//! }
//! ```

/// The fixed start of every skip line (`BERTH-TEST-SKIPPED <test>: <reason> ...`).
pub const SKIP_PREFIX: &str = "BERTH-TEST-SKIPPED";

/// Is this a CI run (`CI` set to `true` or `1`, any case)?
pub fn in_ci() -> bool {
    ci_value_means_ci(std::env::var("CI").ok().as_deref())
}

fn ci_value_means_ci(v: Option<&str>) -> bool {
    v.is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The line printed (outside CI) or the panic message (under CI) for `test` that cannot run
/// because of `why`.
fn message(test: &str, why: &str, ci: bool) -> String {
    if ci {
        format!(
            "{test} cannot run: {why}. Under CI (CI=true) every test must run for real: \
             provide what it needs (see .ci/run) instead of skipping it"
        )
    } else {
        format!("{SKIP_PREFIX} {test}: {why} (skipped outside CI; under CI=true this is a failure)")
    }
}

/// `test` cannot run because of `why`: under CI panic with the reason; otherwise print the
/// skip line on stderr and return, so that the caller returns from the test.
#[track_caller]
pub fn skip_or_fail(test: &str, why: &str) {
    let ci = in_ci();
    let msg = message(test, why, ci);
    if ci {
        panic!("{msg}");
    }
    eprintln!("{msg}");
}

/// `true` when `check` passed and `test` should run; otherwise [`skip_or_fail`] (which panics
/// under CI) and `false`.
#[track_caller]
pub fn require(test: &str, check: Result<(), String>) -> bool {
    match check {
        Ok(()) => true,
        Err(why) => {
            skip_or_fail(test, &why);
            false
        }
    }
}

/// `Ok` when `program args...` runs and exits 0 (e.g. `python3 --version`), else why not.
pub fn command_works(program: &str, args: &[&str]) -> Result<(), String> {
    match std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "`{program} {}` exited with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!(
            "`{program}` cannot be run ({e}); is it installed and on PATH?"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_true_or_1_in_any_case_means_ci_and_anything_else_does_not() {
        for v in ["true", "TRUE", "True", "1"] {
            assert!(ci_value_means_ci(Some(v)), "{v}");
        }
        for v in [None, Some(""), Some("false"), Some("0"), Some("yes")] {
            assert!(!ci_value_means_ci(v), "{v:?}");
        }
    }

    #[test]
    fn skip_line_starts_with_the_fixed_prefix_and_names_test_and_reason() {
        let line = message("docker_test", "Docker engine not reachable", false);
        assert!(
            line.starts_with(&format!("{SKIP_PREFIX} docker_test: ")),
            "{line}"
        );
        assert!(line.contains("Docker engine not reachable"), "{line}");
    }

    #[test]
    fn ci_failure_names_test_and_reason_without_the_skip_prefix() {
        let msg = message("docker_test", "Docker engine not reachable", true);
        assert!(!msg.contains(SKIP_PREFIX), "{msg}");
        assert!(
            msg.starts_with("docker_test cannot run: Docker engine not reachable"),
            "{msg}"
        );
    }

    #[test]
    fn command_works_reports_a_missing_program_by_name() {
        let Err(e) = command_works("berth-no-such-program-xyz", &["--version"]) else {
            panic!("a missing program must not work");
        };
        assert!(e.contains("berth-no-such-program-xyz"), "{e}");
        assert!(command_works("true", &[]).is_ok());
    }
}
