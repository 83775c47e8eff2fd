//! Root device hints, with IPA's hint kinds and oslo.utils' operator syntax:
//! `s== s!= s< s<= s> s>=` (string), `== != < <= > >=` and `=` (numeric, `=` meaning ≥),
//! `<in>` (substring), `<or>` (any of), `<range-in>` (`[a b]` / `(a b)` bounds).
//!
//! Semantics kept from IPA: string hints and device values are lower-cased and URL-quoted before
//! comparing; a string hint without operator means `s==`; `size` is whole GiB, compared with the
//! device size as a float number of GiB (so `size: 100` does not match a 100.5 GiB disk; use
//! `>= 100`), an integer without operator meaning `==`; `rotational` is a strict boolean.
//! Unlike IPA, every failure says which hint failed and why, so a bad hint never falls back.

use serde_json::Value;

/// A device as hints see it. List-valued fields (serial, wwn) match when any element matches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HintTarget {
    pub name: String,
    pub size: u64,
    pub model: Option<String>,
    pub vendor: Option<String>,
    pub serial: Vec<String>,
    pub wwn: Vec<String>,
    pub wwn_with_extension: Option<String>,
    pub wwn_vendor_extension: Option<String>,
    pub rotational: bool,
    pub hctl: Option<String>,
    pub by_path: Option<String>,
    pub tran: Option<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid root device hint {hint}: {reason}")]
pub struct HintError {
    pub hint: String,
    pub reason: String,
}

fn herr(hint: &str, reason: impl Into<String>) -> HintError {
    HintError {
        hint: hint.to_string(),
        reason: reason.into(),
    }
}

const STRING_HINTS: &[&str] = &[
    "model",
    "vendor",
    "serial",
    "wwn",
    "wwn_with_extension",
    "wwn_vendor_extension",
    "name",
    "hctl",
    "by_path",
    "tran",
];

/// One parsed hint: the device field it reads and the expression it applies.
#[derive(Debug, Clone, PartialEq)]
pub struct Hint {
    pub field: String,
    pub expr: Expr,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A string or numeric comparison: operator and operand.
    Cmp(&'static str, String),
    In(String),
    Or(Vec<String>),
    Range {
        lo: f64,
        lo_incl: bool,
        hi: f64,
        hi_incl: bool,
    },
    Bool(bool),
}

/// Python's `urllib.parse.quote` with its default `safe='/'`.
pub fn quote(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn norm(s: &str) -> String {
    quote(&s.trim().to_lowercase())
}

const OPS: &[&str] = &[
    "s==", "s!=", "s<=", "s>=", "s<", "s>", "<=", ">=", "==", "!=", "<", ">", "=",
];

fn parse_bool(hint: &str, v: &Value) -> Result<bool, HintError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) if n.as_i64() == Some(1) => Ok(true),
        Value::Number(n) if n.as_i64() == Some(0) => Ok(false),
        Value::String(s) => match s.trim().to_lowercase().as_str() {
            "1" | "t" | "true" | "on" | "y" | "yes" => Ok(true),
            "0" | "f" | "false" | "off" | "n" | "no" => Ok(false),
            _ => Err(herr(hint, format!("{s:?} is not a boolean"))),
        },
        other => Err(herr(hint, format!("{other} is not a boolean"))),
    }
}

fn parse_expr(hint: &str, text: &str, numeric: bool) -> Result<Expr, HintError> {
    let t = text.trim();
    if let Some(rest) = t.strip_prefix("<or>") {
        let vals: Vec<String> = rest
            .split("<or>")
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        if vals.is_empty() {
            return Err(herr(hint, "<or> needs values"));
        }
        return Ok(Expr::Or(vals));
    }
    if let Some(rest) = t.strip_prefix("<in>") {
        return Ok(Expr::In(rest.trim().to_string()));
    }
    if let Some(rest) = t.strip_prefix("<range-in>") {
        let r = rest.trim();
        let lo_incl = r.starts_with('[');
        let hi_incl = r.ends_with(']');
        let inner = r
            .strip_prefix(['[', '('])
            .and_then(|x| x.strip_suffix([']', ')']))
            .ok_or_else(|| herr(hint, "<range-in> needs [a b] or (a b)"))?;
        let nums: Vec<f64> = inner
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| herr(hint, "<range-in> bounds must be numbers"))?;
        if nums.len() != 2 {
            return Err(herr(hint, "<range-in> needs two bounds"));
        }
        return Ok(Expr::Range {
            lo: nums[0],
            lo_incl,
            hi: nums[1],
            hi_incl,
        });
    }
    if t.starts_with("<all-in>") {
        return Err(herr(
            hint,
            "<all-in> compares lists and cannot match a disk property",
        ));
    }
    for op in OPS {
        if let Some(rest) = t.strip_prefix(op) {
            let v = rest.trim().to_string();
            if op.starts_with('s') == numeric && numeric {
                return Err(herr(
                    hint,
                    format!("string operator {op} on a numeric hint"),
                ));
            }
            if numeric && v.parse::<f64>().is_err() {
                return Err(herr(hint, format!("{v:?} is not a number")));
            }
            return Ok(Expr::Cmp(op, v));
        }
    }
    Ok(if numeric {
        Expr::Cmp("==", t.to_string())
    } else {
        Expr::Cmp("s==", t.to_string())
    })
}

/// Validate hints (a JSON object). Unknown hint names are errors.
pub fn parse(hints: &Value) -> Result<Vec<Hint>, HintError> {
    let obj = hints
        .as_object()
        .ok_or_else(|| herr("(root_device)", "hints must be a JSON object"))?;
    let mut out = Vec::new();
    for (k, v) in obj {
        let expr = match k.as_str() {
            "size" => match v {
                Value::Number(n) => match n.as_u64() {
                    Some(g) if g > 0 => Expr::Cmp("==", g.to_string()),
                    _ => return Err(herr(k, format!("{n} is not a positive integer number of GiB"))),
                },
                Value::String(s) => match parse_expr(k, s, true)? {
                    Expr::Cmp(op, v) => {
                        let n: f64 = v.parse().map_err(|_| herr(k, format!("{v:?} is not a number")))?;
                        if n <= 0.0 {
                            return Err(herr(k, "size must be positive"));
                        }
                        Expr::Cmp(op, v)
                    }
                    e => e,
                },
                other => return Err(herr(k, format!("{other} is not a size in GiB"))),
            },
            "rotational" => Expr::Bool(parse_bool(k, v)?),
            f if STRING_HINTS.contains(&f) => match v {
                Value::String(s) => parse_expr(k, s, false)?,
                Value::Number(n) => Expr::Cmp("s==", n.to_string()),
                other => return Err(herr(k, format!("{other} is not a string"))),
            },
            other => {
                return Err(herr(
                    other,
                    "unknown hint (known: size, rotational, model, vendor, serial, wwn, wwn_with_extension, \
                     wwn_vendor_extension, name, hctl, by_path, tran)",
                ))
            }
        };
        out.push(Hint {
            field: k.clone(),
            expr,
        });
    }
    Ok(out)
}

/// `x` within a `<range-in>` expression's bounds (each inclusive or not).
fn in_range(e: &Expr, x: f64) -> bool {
    match *e {
        Expr::Range {
            lo,
            lo_incl,
            hi,
            hi_incl,
        } => (if lo_incl { x >= lo } else { x > lo }) && (if hi_incl { x <= hi } else { x < hi }),
        _ => false,
    }
}

fn cmp_num(op: &str, a: f64, b: f64) -> bool {
    match op {
        "==" => a == b,
        "!=" => a != b,
        "<" => a < b,
        "<=" => a <= b,
        ">" => a > b,
        ">=" | "=" => a >= b,
        _ => false,
    }
}

fn cmp_str(op: &str, a: &str, b: &str) -> bool {
    match op {
        "s==" => a == b,
        "s!=" => a != b,
        "s<" => a < b,
        "s<=" => a <= b,
        "s>" => a > b,
        "s>=" => a >= b,
        // A numeric operator on a string hint: compare as numbers when both are numbers.
        _ => match (a.parse::<f64>(), b.parse::<f64>()) {
            (Ok(x), Ok(y)) => cmp_num(op, x, y),
            _ => false,
        },
    }
}

fn match_str(expr: &Expr, value: &str) -> bool {
    let v = norm(value);
    match expr {
        Expr::Cmp(op, operand) => cmp_str(op, &v, &norm(operand)),
        Expr::In(s) => v.contains(&norm(s)),
        Expr::Or(vals) => vals.iter().any(|x| norm(x) == v),
        e @ Expr::Range { .. } => value.trim().parse::<f64>().is_ok_and(|x| in_range(e, x)),
        Expr::Bool(_) => false,
    }
}

fn describe(expr: &Expr) -> String {
    match expr {
        Expr::Cmp(op, v) => format!("{op} {v}"),
        Expr::In(v) => format!("<in> {v}"),
        Expr::Or(v) => v
            .iter()
            .map(|x| format!("<or> {x}"))
            .collect::<Vec<_>>()
            .join(" "),
        Expr::Range {
            lo,
            lo_incl,
            hi,
            hi_incl,
        } => {
            format!(
                "<range-in> {}{lo} {hi}{}",
                if *lo_incl { '[' } else { '(' },
                if *hi_incl { ']' } else { ')' }
            )
        }
        Expr::Bool(b) => b.to_string(),
    }
}

/// Why a device does not match a hint (shown to the operator when no disk matches).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Mismatch(pub String);

/// Check one hint against a device: `Ok(())`, or why it does not match.
pub fn check(h: &Hint, d: &HintTarget) -> Result<(), Mismatch> {
    let want = describe(&h.expr);
    let single = |v: &Option<String>| -> Result<(), Mismatch> {
        match v {
            Some(v) if match_str(&h.expr, v) => Ok(()),
            Some(v) => Err(Mismatch(format!(
                "{} {v:?} does not match {want:?}",
                h.field
            ))),
            None => Err(Mismatch(format!("{} is unknown, wanted {want:?}", h.field))),
        }
    };
    let list = |vs: &[String]| -> Result<(), Mismatch> {
        if vs.iter().any(|v| match_str(&h.expr, v)) {
            Ok(())
        } else if vs.is_empty() {
            Err(Mismatch(format!("{} is unknown, wanted {want:?}", h.field)))
        } else {
            Err(Mismatch(format!(
                "{} {vs:?} does not match {want:?}",
                h.field
            )))
        }
    };
    match h.field.as_str() {
        "size" => {
            let gib = d.size as f64 / (1u64 << 30) as f64;
            let ok = match &h.expr {
                Expr::Cmp(op, v) => v
                    .parse::<f64>()
                    .map(|n| cmp_num(op, gib, n))
                    .unwrap_or(false),
                Expr::Or(vals) => vals
                    .iter()
                    .any(|v| v.parse::<f64>().map(|n| gib == n).unwrap_or(false)),
                e @ Expr::Range { .. } => in_range(e, gib),
                _ => false,
            };
            if ok {
                Ok(())
            } else {
                Err(Mismatch(format!(
                    "size {gib:.3} GiB does not match {want:?}"
                )))
            }
        }
        "rotational" => match h.expr {
            Expr::Bool(b) if b == d.rotational => Ok(()),
            _ => Err(Mismatch(format!(
                "rotational is {}, wanted {want}",
                d.rotational
            ))),
        },
        "name" => {
            // A by-path name matches the disk it points to, like the /dev name itself.
            if match_str(&h.expr, &d.name)
                || d.by_path.as_deref().is_some_and(|p| match_str(&h.expr, p))
            {
                Ok(())
            } else {
                Err(Mismatch(format!(
                    "name {:?} does not match {want:?}",
                    d.name
                )))
            }
        }
        "model" => single(&d.model),
        "vendor" => single(&d.vendor),
        "serial" => list(&d.serial),
        "wwn" => list(&d.wwn),
        "wwn_with_extension" => single(&d.wwn_with_extension),
        "wwn_vendor_extension" => single(&d.wwn_vendor_extension),
        "hctl" => single(&d.hctl),
        "by_path" => single(&d.by_path),
        "tran" => single(&d.tran),
        other => Err(Mismatch(format!("unknown hint {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sda() -> HintTarget {
        HintTarget {
            name: "/dev/sda".into(),
            size: 500 << 30,
            model: Some("Samsung SSD 860".into()),
            vendor: Some("ATA".into()),
            serial: vec!["S3Z9NB0K".into(), "S3Z9NB0K123".into()],
            wwn: vec!["0x5002538e40a1b2c3".into()],
            wwn_with_extension: Some("0x5002538e40a1b2c3".into()),
            wwn_vendor_extension: None,
            rotational: false,
            hctl: Some("0:0:0:0".into()),
            by_path: Some("/dev/disk/by-path/pci-0000:00:1f.2-ata-1".into()),
            tran: Some("sata".into()),
        }
    }

    fn sdb() -> HintTarget {
        HintTarget {
            name: "/dev/sdb".into(),
            size: (100 << 30) + (1 << 29),
            model: Some("ST1000 DM".into()),
            vendor: Some("Seagate".into()),
            rotational: true,
            hctl: Some("1:0:0:0".into()),
            ..Default::default()
        }
    }

    fn matches(hints: Value, d: &HintTarget) -> bool {
        parse(&hints).unwrap().iter().all(|h| check(h, d).is_ok())
    }

    /// The verified IPA examples (AGENT_PROTOCOL §11.3), pass and fail.
    #[test]
    fn ipa_examples() {
        let (a, b) = (sda(), sdb());
        let cases = [
            (json!({"size": 500}), true, false),
            (json!({"size": ">= 100"}), true, true),
            (json!({"size": 100}), false, false),
            (json!({"model": "samsung ssd 860"}), true, false),
            (json!({"model": "<in> ST1000"}), false, true),
            (json!({"name": "/dev/sdb"}), false, true),
            (json!({"name": "sdb"}), false, false),
            (json!({"serial": "S3Z9NB0K123"}), true, false),
            (json!({"vendor": "<or> seagate <or> hitachi"}), false, true),
            (json!({"rotational": "true"}), false, true),
            (json!({"rotational": false}), true, false),
            (json!({"hctl": "1:0:0:0"}), false, true),
        ];
        for (h, on_a, on_b) in cases {
            assert_eq!(matches(h.clone(), &a), on_a, "{h} on sda");
            assert_eq!(matches(h.clone(), &b), on_b, "{h} on sdb");
        }
    }

    #[test]
    fn every_hint_kind_passes_and_fails() {
        let a = sda();
        for (field, good, bad) in [
            ("model", "s== samsung ssd 860", "s!= samsung ssd 860"),
            ("vendor", "ata", "hitachi"),
            ("serial", "s3z9nb0k", "nope"),
            ("wwn", "0x5002538e40a1b2c3", "0x0"),
            ("wwn_with_extension", "0x5002538e40a1b2c3", "0x1"),
            ("name", "/dev/sda", "/dev/sdz"),
            (
                "name",
                "/dev/disk/by-path/pci-0000:00:1f.2-ata-1",
                "/dev/disk/by-path/other",
            ),
            ("hctl", "0:0:0:0", "9:0:0:0"),
            (
                "by_path",
                "/dev/disk/by-path/pci-0000:00:1f.2-ata-1",
                "/dev/disk/by-path/x",
            ),
            ("tran", "sata", "nvme"),
        ] {
            assert!(matches(json!({ field: good }), &a), "{field} {good}");
            assert!(!matches(json!({ field: bad }), &a), "{field} {bad}");
        }
        // wwn_vendor_extension is unknown on this disk: never matches, and says so.
        let h = &parse(&json!({"wwn_vendor_extension": "0x1"})).unwrap()[0];
        assert!(check(h, &a).unwrap_err().0.contains("unknown"));
    }

    #[test]
    fn every_operator() {
        let a = sda();
        for (hint, ok) in [
            (json!({"model": "s< t"}), true),
            (json!({"model": "s<= samsung ssd 860"}), true),
            (json!({"model": "s> t"}), false),
            (json!({"model": "s>= samsung"}), true),
            (json!({"model": "<in> ssd"}), true),
            (json!({"model": "<or> a <or> samsung ssd 860"}), true),
            (json!({"size": "> 499"}), true),
            (json!({"size": "< 500"}), false),
            (json!({"size": "<= 500"}), true),
            (json!({"size": "!= 500"}), false),
            (json!({"size": "= 400"}), true),
            (json!({"size": "== 500"}), true),
            (json!({"size": "<range-in> [500 600]"}), true),
            (json!({"size": "<range-in> (500 600]"}), false),
            (json!({"size": "<or> 10 <or> 500"}), true),
        ] {
            assert_eq!(matches(hint.clone(), &a), ok, "{hint}");
        }
    }

    #[test]
    fn size_edge_cases() {
        let mut d = sda();
        d.size = (10 << 30) + (1 << 29); // 10.5 GiB
        assert!(!matches(json!({"size": 10}), &d));
        assert!(!matches(json!({"size": 11}), &d));
        assert!(matches(json!({"size": ">= 10"}), &d));
        assert!(matches(json!({"size": "< 11"}), &d));
        assert!(matches(json!({"size": "== 10.5"}), &d));
        d.size = 10 << 30;
        assert!(matches(json!({"size": 10}), &d));
        assert!(matches(json!({"size": "10"}), &d));
    }

    #[test]
    fn invalid_hints_are_errors() {
        for h in [
            json!({"size": 0}),
            json!({"size": -5}),
            json!({"size": "big"}),
            json!({"size": "s== 10"}),
            json!({"size": "<range-in> [1]"}),
            json!({"rotational": "sometimes"}),
            json!({"colour": "blue"}),
            json!({"model": ["a"]}),
            json!({"model": "<all-in> [a]"}),
            json!(["not", "an", "object"]),
        ] {
            assert!(parse(&h).is_err(), "{h}");
        }
    }

    #[test]
    fn quoting_like_python() {
        assert_eq!(quote("a b:c/d"), "a%20b%3Ac/d");
        // Quoting is applied to both sides, so special characters still match.
        let mut d = sda();
        d.model = Some("Model: X/Y 1".into());
        assert!(matches(json!({"model": "model: x/y 1"}), &d));
    }
}
