//! Running `wrk` and reading its text report.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// What one wrk run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct WrkResult {
    pub requests_per_sec: f64,
    pub p99: Duration,
    /// Socket errors (connect, read, write, timeout) plus non-2xx/3xx responses.
    pub errors: u64,
    pub requests: u64,
}

/// Settings shared by every target of one benchmark run.
#[derive(Debug, Clone)]
pub struct WrkSettings {
    pub threads: u32,
    pub connections: u32,
    pub duration: Duration,
    /// Adds `-H 'Connection: close'`: a new TCP connection per request.
    pub close: bool,
}

impl WrkSettings {
    pub fn args(&self, url: &str) -> Vec<String> {
        let mut args = vec![
            format!("-t{}", self.threads),
            format!("-c{}", self.connections),
            format!("-d{}s", self.duration.as_secs().max(1)),
            "--latency".to_string(),
        ];
        if self.close {
            args.push("-H".into());
            args.push("Connection: close".into());
        }
        args.push(url.to_string());
        args
    }

    /// The command line as a user would type it.
    pub fn display(&self, url: &str) -> String {
        let mut s = format!(
            "wrk -t{} -c{} -d{}s --latency",
            self.threads,
            self.connections,
            self.duration.as_secs().max(1)
        );
        if self.close {
            s.push_str(" -H 'Connection: close'");
        }
        s.push(' ');
        s.push_str(url);
        s
    }
}

pub fn run(wrk: &Path, settings: &WrkSettings, url: &str) -> Result<WrkResult> {
    let out = Command::new(wrk)
        .args(settings.args(url))
        .output()
        .with_context(|| format!("running {}", wrk.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} exited with {}: {}{}",
            settings.display(url),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&stdout).with_context(|| format!("reading the report of {}", settings.display(url)))
}

/// Parses wrk's report (run with `--latency`).
pub fn parse(report: &str) -> Result<WrkResult> {
    let mut rps = None;
    let mut p99 = None;
    let mut errors = 0u64;
    let mut requests = None;
    for line in report.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            rps = Some(
                v.trim()
                    .parse::<f64>()
                    .with_context(|| format!("bad Requests/sec line: {t}"))?,
            );
        } else if let Some(v) = t.strip_prefix("99%") {
            p99 = Some(parse_duration(v.trim())?);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            // "connect 0, read 12, write 0, timeout 0"
            for part in v.split(',') {
                if let Some(n) = part.split_whitespace().nth(1) {
                    errors += n.parse::<u64>().unwrap_or(0);
                }
            }
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if t.contains("requests in") {
            requests = t.split_whitespace().next().and_then(|n| n.parse().ok());
        }
    }
    match (rps, p99) {
        (Some(requests_per_sec), Some(p99)) => Ok(WrkResult {
            requests_per_sec,
            p99,
            errors,
            requests: requests.unwrap_or(0),
        }),
        _ => bail!("no Requests/sec or 99% latency line in wrk output:\n{report}"),
    }
}

/// wrk's latency format: `353.00us`, `1.27ms`, `2.01s`, `1.50m`.
fn parse_duration(v: &str) -> Result<Duration> {
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .with_context(|| format!("latency without unit: {v}"))?;
    let (num, unit) = v.split_at(split);
    let num: f64 = num
        .parse()
        .with_context(|| format!("bad latency number: {v}"))?;
    let secs = match unit.trim() {
        "us" => num / 1e6,
        "ms" => num / 1e3,
        "s" => num,
        "m" => num * 60.0,
        "h" => num * 3600.0,
        other => bail!("unknown latency unit {other:?} in {v}"),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 10s test @ http://127.0.0.1:18080/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   412.31us  120.05us   5.32ms   90.12%
    Req/Sec    76.12k     3.01k   80.55k    71.00%
  Latency Distribution
     50%  398.00us
     75%  441.00us
     90%  502.00us
     99%    1.27ms
  757412 requests in 10.00s, 108.35MB read
  Socket errors: connect 0, read 3, write 1, timeout 0
  Non-2xx or 3xx responses: 2
Requests/sec:  75741.20
Transfer/sec:     10.83MB
";

    #[test]
    fn parses_throughput_p99_and_errors() {
        let r = parse(REPORT).expect("parse");
        assert_eq!(r.requests_per_sec, 75741.20);
        assert_eq!(r.p99, Duration::from_micros(1270));
        assert_eq!(r.errors, 6);
        assert_eq!(r.requests, 757412);
    }

    #[test]
    fn latency_units_convert() {
        assert_eq!(
            parse_duration("353.00us").expect("us"),
            Duration::from_micros(353)
        );
        assert_eq!(
            parse_duration("2.50s").expect("s"),
            Duration::from_millis(2500)
        );
        assert!(parse_duration("12").is_err());
        assert!(parse_duration("1.0xs").is_err());
    }

    #[test]
    fn report_without_results_is_an_error_naming_the_output() {
        let err =
            parse("unable to connect to 127.0.0.1:1 Connection refused\n").expect_err("no results");
        assert!(err.to_string().contains("Connection refused"));
    }

    #[test]
    fn close_mode_adds_the_connection_header() {
        let s = WrkSettings {
            threads: 1,
            connections: 32,
            duration: Duration::from_secs(10),
            close: true,
        };
        assert_eq!(
            s.display("http://x/"),
            "wrk -t1 -c32 -d10s --latency -H 'Connection: close' http://x/"
        );
        assert!(s
            .args("http://x/")
            .contains(&"Connection: close".to_string()));
    }
}
