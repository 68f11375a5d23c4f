//! Kubernetes resource quantities: `cpu: 500m`, `cpu: 0.5`, `memory: 128Mi`, `memory: 1G`.
//!
//! A [`Quantity`] keeps the text the user wrote (so `get -o yaml` shows it unchanged);
//! [`Quantity::parse`] turns text into a [`ParsedQuantity`], an exact non-negative amount in
//! nano-units, from which CPU is read as millicores ([`ParsedQuantity::millis`]) and memory as
//! bytes ([`ParsedQuantity::value`]), both rounded up like Kubernetes does. [`format_cpu`] and
//! [`format_memory`] go the other way for display and for objects Berth writes itself (node
//! capacity). [`pod_requests`] sums what a pod asks of a node: the scheduler's input.
//!
//! Grammar (as in Kubernetes): `<sign?><digits>[.<digits>]<suffix>` where suffix is a binary
//! SI suffix (`Ki Mi Gi Ti Pi Ei`), a decimal SI suffix (`n u m k M G T P E`), a decimal
//! exponent (`e3`, `E-2`), or nothing. Negative quantities are rejected: no resource in Berth
//! can be negative.

use std::fmt;

use crate::types::{Container, PodSpec, Quantity};

/// Nano-units per unit.
const NANO: u128 = 1_000_000_000;
/// Above this many nano-units a quantity is refused rather than overflowing (about 3e20 units,
/// far beyond any machine: 256 EiB).
const MAX_NANOS: u128 = 1 << 108;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("quantity is empty")]
    Empty,
    #[error("invalid quantity {0:?}: expected a number with an optional suffix, like 500m, 0.5, 128Mi or 1G")]
    Syntax(String),
    #[error("invalid quantity {0:?}: unknown suffix {1:?} (use one of Ki Mi Gi Ti Pi Ei, n u m k M G T P E, or an exponent like e3)")]
    Suffix(String, String),
    #[error("invalid quantity {0:?}: must not be negative")]
    Negative(String),
    #[error("invalid quantity {0:?}: too large")]
    TooLarge(String),
}

/// An exact, non-negative quantity in nano-units (1 = 10^-9 of a unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ParsedQuantity {
    nanos: u128,
}

impl ParsedQuantity {
    pub fn from_millis(m: u64) -> Self {
        ParsedQuantity {
            nanos: u128::from(m) * 1_000_000,
        }
    }

    pub fn from_value(v: u64) -> Self {
        ParsedQuantity {
            nanos: u128::from(v) * NANO,
        }
    }

    /// Thousandths of a unit, rounded up (CPU: millicores). Saturates at `u64::MAX`.
    pub fn millis(&self) -> u64 {
        saturate(self.nanos.div_ceil(1_000_000))
    }

    /// Whole units, rounded up (memory: bytes). Saturates at `u64::MAX`.
    pub fn value(&self) -> u64 {
        saturate(self.nanos.div_ceil(NANO))
    }

    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }
}

fn saturate(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

impl Quantity {
    /// Parse quantity text (see the module docs for the grammar).
    pub fn parse(s: &str) -> Result<ParsedQuantity, QuantityError> {
        parse(s)
    }

    /// Parse this quantity's text.
    pub fn parsed(&self) -> Result<ParsedQuantity, QuantityError> {
        parse(&self.0)
    }

    /// A CPU quantity in canonical form: `1500` -> "1500m", `2000` -> "2".
    pub fn from_millicores(m: u64) -> Quantity {
        Quantity(format_cpu(m))
    }

    /// A memory quantity in canonical form: 8 GiB -> "8Gi".
    pub fn from_bytes(b: u64) -> Quantity {
        Quantity(format_memory(b))
    }
}

impl From<&str> for Quantity {
    fn from(s: &str) -> Self {
        Quantity(s.to_string())
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn parse(input: &str) -> Result<ParsedQuantity, QuantityError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(QuantityError::Empty);
    }
    let syntax = || QuantityError::Syntax(input.to_string());
    let (negative, s) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    // Split number and suffix: the number is digits with at most one '.'.
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    let (int_part, frac_part) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
        return Err(syntax());
    }
    // mantissa = int_part.frac_part as an integer, scaled by 10^-len(frac).
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 36 {
        return Err(QuantityError::TooLarge(input.to_string()));
    }
    let mantissa: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| syntax())?
    };
    let mut exp10: i32 = -(frac_part.len() as i32);
    let mut mul2: u32 = 0;
    match suffix {
        "" => {}
        "Ki" => mul2 = 10,
        "Mi" => mul2 = 20,
        "Gi" => mul2 = 30,
        "Ti" => mul2 = 40,
        "Pi" => mul2 = 50,
        "Ei" => mul2 = 60,
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        other => {
            let exp = other
                .strip_prefix('e')
                .or_else(|| other.strip_prefix('E'))
                .filter(|e| {
                    let e = e.strip_prefix(['+', '-']).unwrap_or(e);
                    !e.is_empty() && e.len() <= 4 && e.bytes().all(|b| b.is_ascii_digit())
                })
                .ok_or_else(|| QuantityError::Suffix(input.to_string(), other.to_string()))?;
            let e: i32 = exp.parse().map_err(|_| syntax())?;
            exp10 += e;
        }
    }
    if negative && mantissa != 0 {
        return Err(QuantityError::Negative(input.to_string()));
    }
    let too_large = || QuantityError::TooLarge(input.to_string());
    // nanos = mantissa * 2^mul2 * 10^(exp10 + 9), rounded up when the exponent is negative.
    let mut v = mantissa
        .checked_mul(1u128 << mul2)
        .filter(|v| *v <= MAX_NANOS)
        .ok_or_else(too_large)?;
    let e = exp10 + 9;
    if e >= 0 {
        for _ in 0..e {
            v = v
                .checked_mul(10)
                .filter(|v| *v <= MAX_NANOS)
                .ok_or_else(too_large)?;
            if v == 0 {
                break;
            }
        }
    } else {
        for _ in 0..(-e) {
            if v == 0 {
                break;
            }
            v = v.div_ceil(10);
        }
    }
    Ok(ParsedQuantity { nanos: v })
}

/// Millicores in canonical form: whole cores without a suffix, otherwise millicores.
pub fn format_cpu(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

/// Bytes in canonical form: the largest suffix that divides evenly, binary (`8Gi`) or decimal
/// (`1G`), whichever gives the smaller number; else plain bytes.
pub fn format_memory(bytes: u64) -> String {
    if bytes == 0 {
        return "0".to_string();
    }
    const BIN: [(&str, u64); 6] = [
        ("Ei", 1 << 60),
        ("Pi", 1 << 50),
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    const DEC: [(&str, u64); 6] = [
        ("E", 1_000_000_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("T", 1_000_000_000_000),
        ("G", 1_000_000_000),
        ("M", 1_000_000),
        ("k", 1_000),
    ];
    let largest = |table: &[(&'static str, u64)]| {
        table
            .iter()
            .find(|(_, unit)| bytes.is_multiple_of(*unit))
            .map(|(suffix, unit)| (bytes / unit, *suffix))
    };
    // The shorter spelling wins; binary on a tie (memory is usually sized in powers of two).
    match (largest(&BIN), largest(&DEC)) {
        (Some((b, _)), Some((d, ds))) if d < b => return format!("{d}{ds}"),
        (Some((b, bs)), _) => return format!("{b}{bs}"),
        (None, Some((d, ds))) => return format!("{d}{ds}"),
        (None, None) => {}
    }
    bytes.to_string()
}

/// CPU and memory as plain numbers: the unit of scheduling arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Resources {
    pub milli_cpu: u64,
    /// Bytes.
    pub memory: u64,
}

impl Resources {
    pub fn new(milli_cpu: u64, memory: u64) -> Self {
        Resources { milli_cpu, memory }
    }

    pub fn saturating_add(self, o: Resources) -> Resources {
        Resources {
            milli_cpu: self.milli_cpu.saturating_add(o.milli_cpu),
            memory: self.memory.saturating_add(o.memory),
        }
    }

    pub fn saturating_sub(self, o: Resources) -> Resources {
        Resources {
            milli_cpu: self.milli_cpu.saturating_sub(o.milli_cpu),
            memory: self.memory.saturating_sub(o.memory),
        }
    }

    /// Does `self` fit inside `capacity` in every dimension?
    pub fn fits_in(&self, capacity: &Resources) -> bool {
        self.milli_cpu <= capacity.milli_cpu && self.memory <= capacity.memory
    }

    /// Read `cpu` and `memory` from a quantity map (node capacity, a container's requests).
    /// Unparsable values count as zero: validation rejects them before they are stored.
    pub fn from_map(m: &std::collections::BTreeMap<String, Quantity>) -> Resources {
        let get = |k: &str| m.get(k).and_then(|q| q.parsed().ok());
        Resources {
            milli_cpu: get("cpu").map(|q| q.millis()).unwrap_or(0),
            memory: get("memory").map(|q| q.value()).unwrap_or(0),
        }
    }
}

impl std::ops::Add for Resources {
    type Output = Resources;
    fn add(self, o: Resources) -> Resources {
        self.saturating_add(o)
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu={} memory={}",
            format_cpu(self.milli_cpu),
            format_memory(self.memory)
        )
    }
}

/// Upper bounds per resource; `None` means unbounded (no limit given and no request to
/// default from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Limits {
    pub milli_cpu: Option<u64>,
    pub memory: Option<u64>,
}

fn quantity_of(
    m: Option<&std::collections::BTreeMap<String, Quantity>>,
    key: &str,
) -> Option<ParsedQuantity> {
    m.and_then(|m| m.get(key)).and_then(|q| q.parsed().ok())
}

/// What one container asks for. As in Kubernetes, a resource with only a limit requests its
/// limit; a resource with neither requests zero.
pub fn container_requests(c: &Container) -> Resources {
    let r = c.resources.as_ref();
    let get = |key: &str| {
        quantity_of(r.map(|r| &r.requests), key).or_else(|| quantity_of(r.map(|r| &r.limits), key))
    };
    Resources {
        milli_cpu: get("cpu").map(|q| q.millis()).unwrap_or(0),
        memory: get("memory").map(|q| q.value()).unwrap_or(0),
    }
}

/// One container's limits. A resource with a request but no limit is limited to its request
/// (Berth's runtimes need a concrete bound to enforce); with neither it is unbounded.
pub fn container_limits(c: &Container) -> Limits {
    let r = c.resources.as_ref();
    let get = |key: &str| {
        quantity_of(r.map(|r| &r.limits), key).or_else(|| quantity_of(r.map(|r| &r.requests), key))
    };
    Limits {
        milli_cpu: get("cpu").map(|q| q.millis()),
        memory: get("memory").map(|q| q.value()),
    }
}

/// What the scheduler reserves on a node for a pod: the sum of its app containers' and
/// sidecars' requests, or, if larger (per resource), the most any init container needs
/// beside the sidecars started before it (Kubernetes' effective requests, 1.29+).
pub fn pod_requests(spec: &PodSpec) -> Resources {
    let mut running = spec
        .containers
        .iter()
        .map(container_requests)
        .fold(Resources::default(), Resources::saturating_add);
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for c in &spec.init_containers {
        let r = container_requests(c);
        if c.is_sidecar() {
            running = running.saturating_add(r);
            sidecars = sidecars.saturating_add(r);
        } else {
            let need = r.saturating_add(sidecars);
            init_peak = Resources {
                milli_cpu: init_peak.milli_cpu.max(need.milli_cpu),
                memory: init_peak.memory.max(need.memory),
            };
        }
    }
    Resources {
        milli_cpu: running.milli_cpu.max(init_peak.milli_cpu),
        memory: running.memory.max(init_peak.memory),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pod_requests_count_sidecars_and_the_largest_init_container() {
        let c = |name: &str, cpu: &str, mem: &str, sidecar: bool| Container {
            name: name.into(),
            restart_policy: sidecar.then(|| "Always".to_string()),
            resources: Some(crate::types::ResourceRequirements {
                requests: [
                    ("cpu".to_string(), Quantity(cpu.into())),
                    ("memory".to_string(), Quantity(mem.into())),
                ]
                .into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let spec = PodSpec {
            init_containers: vec![
                c("big-cpu", "2", "10Mi", false),
                c("proxy", "100m", "50Mi", true),
                c("big-mem", "100m", "500Mi", false),
            ],
            containers: vec![c("app", "500m", "100Mi", false)],
            ..Default::default()
        };
        let mi = 1024 * 1024;
        // cpu: init peak 2000m > app 500m + sidecar 100m; memory: big-mem 500Mi beside the
        // 50Mi sidecar > 150Mi.
        assert_eq!(pod_requests(&spec), Resources::new(2000, 550 * mi));
        let plain = PodSpec {
            containers: vec![c("app", "500m", "100Mi", false)],
            ..Default::default()
        };
        assert_eq!(pod_requests(&plain), Resources::new(500, 100 * mi));
    }

    #[test]
    fn parses_cpu_forms_to_millicores() {
        for (s, m) in [
            ("500m", 500),
            ("0.5", 500),
            ("2", 2000),
            ("1", 1000),
            ("0.1", 100),
            ("1.5", 1500),
            ("100u", 1),
            ("1n", 1),
            ("0", 0),
            ("+250m", 250),
            (".25", 250),
        ] {
            assert_eq!(Quantity::parse(s).map(|q| q.millis()), Ok(m), "{s}");
        }
    }

    #[test]
    fn parses_memory_forms_to_bytes() {
        for (s, b) in [
            ("128Mi", 128 << 20),
            ("1G", 1_000_000_000),
            ("1Gi", 1 << 30),
            ("512k", 512_000),
            ("1e3", 1000),
            ("1E3", 1000),
            ("12345", 12345),
            ("1.5Gi", 3 << 29),
            ("0.5k", 500),
            ("1Ei", 1 << 60),
        ] {
            assert_eq!(Quantity::parse(s).map(|q| q.value()), Ok(b), "{s}");
        }
    }

    #[test]
    fn rejects_malformed_quantities() {
        assert_eq!(Quantity::parse(""), Err(QuantityError::Empty));
        assert!(matches!(
            Quantity::parse("12Qi"),
            Err(QuantityError::Suffix(_, s)) if s == "Qi"
        ));
        assert!(matches!(
            Quantity::parse("-1"),
            Err(QuantityError::Negative(_))
        ));
        assert!(matches!(
            Quantity::parse("abc"),
            Err(QuantityError::Syntax(_))
        ));
        assert!(matches!(
            Quantity::parse("1.2.3"),
            Err(QuantityError::Syntax(_))
        ));
        assert!(matches!(
            Quantity::parse("."),
            Err(QuantityError::Syntax(_))
        ));
        assert!(matches!(
            Quantity::parse("1e99999"),
            Err(QuantityError::Suffix(..))
        ));
        assert!(matches!(
            Quantity::parse("1e30"),
            Err(QuantityError::TooLarge(_))
        ));
        assert!(matches!(
            Quantity::parse("99999999999999999999999999999999999999999"),
            Err(QuantityError::TooLarge(_))
        ));
    }

    #[test]
    fn formats_canonically() {
        assert_eq!(format_cpu(1500), "1500m");
        assert_eq!(format_cpu(2000), "2");
        assert_eq!(format_cpu(0), "0");
        assert_eq!(format_memory(8 << 30), "8Gi");
        assert_eq!(format_memory(1_000_000_000), "1G");
        assert_eq!(format_memory(1536 << 20), "1536Mi");
        assert_eq!(format_memory(1001), "1001");
        assert_eq!(format_memory(0), "0");
    }
}
