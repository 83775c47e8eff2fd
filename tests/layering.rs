//! The layering `src/lib.rs` states, checked against the code: every `crate::`/`super::`
//! path a file names is read, and the test fails when a module names one of a higher layer,
//! or when files name each other in a loop. (A module's files may use their own `mod.rs`:
//! that is where a module keeps what its files share.)
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules by layer, lowest first; a module may use only lower layers (and itself).
const LAYERS: &[&[&str]] = &[
    &[
        "error",
        "redact",
        "fsread",
        "state",
        "timeline",
        "test_support",
    ],
    &["panics"],
    &["config"],
    &["logging", "tls"],
    &["system", "conductor"],
    &["hardware"],
    &["disk", "inspect", "network"],
    &["image"],
    &["deploy"],
    &["commands", "install"],
    &["executor"],
    &["api"],
    &["agent"],
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/disk/device.rs` → ["disk", "device"]; `src/disk/mod.rs` → ["disk"].
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts
}

/// The file that holds module path `m`, if it is a file of its own.
fn file_of(src: &Path, m: &[String]) -> Option<PathBuf> {
    let base = m.iter().fold(src.to_path_buf(), |p, c| p.join(c));
    [base.with_extension("rs"), base.join("mod.rs")]
        .into_iter()
        .find(|p| p.is_file())
}

/// The code of a file without its `#[cfg(test)]` module (tests sit at the end by convention)
/// and without comments.
fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Module paths named with `crate::a::b` or `super::a`, resolved to the longest prefix that
/// is a file.
fn named(src: &Path, me: &[String], is_mod_rs: bool, text: &str) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for (prefix, base) in [
        ("crate::", Vec::new()),
        ("super::", {
            // `super` of a file is its module's parent; of a mod.rs, the module's parent too.
            let mut b = me.to_vec();
            if !is_mod_rs || !b.is_empty() {
                b.pop();
            }
            b
        }),
    ] {
        let mut rest = text;
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().last();
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(ident) {
                continue;
            }
            let path: Vec<String> = rest
                .split("::")
                .map(|seg| seg.chars().take_while(|c| ident(*c)).collect::<String>())
                .take_while(|s| !s.is_empty())
                .collect();
            let mut full = base.clone();
            full.extend(path);
            // The longest prefix that is a file of the crate.
            while !full.is_empty() {
                if file_of(src, &full).is_some() {
                    out.insert(full.clone());
                    break;
                }
                full.pop();
            }
        }
    }
    out
}

#[test]
fn no_module_uses_a_higher_layer_and_no_files_loop() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    let mut upward = Vec::new();
    for f in &all {
        let me = module_of(&src, f);
        if me.is_empty() || me == ["main"] || me == ["lib"] {
            continue;
        }
        let is_mod = f.file_name().is_some_and(|n| n == "mod.rs");
        let my_rank = rank(&me[0]).unwrap_or_else(|| panic!("{} is in no layer of LAYERS", me[0]));
        for target in named(&src, &me, is_mod, &code(f)) {
            if target == me || target.is_empty() {
                continue;
            }
            if target[0] != me[0] {
                let r = rank(&target[0]).unwrap_or(usize::MAX);
                if r >= my_rank {
                    upward.push(format!("{} uses {}", me.join("::"), target.join("::")));
                }
            }
            // A file may use its own module's mod.rs (what its files share).
            if target.len() + 1 == me.len() && me.starts_with(&target) {
                continue;
            }
            edges.entry(me.clone()).or_default().insert(target);
        }
    }
    assert!(
        upward.is_empty(),
        "modules using a layer above them:\n{}",
        upward.join("\n")
    );
    // Loops among files: depth-first search for a back edge.
    fn visit(
        n: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        stack: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
        loops: &mut Vec<String>,
    ) {
        if done.contains(n) {
            return;
        }
        if let Some(i) = stack.iter().position(|s| s == n) {
            let cycle: Vec<String> = stack[i..].iter().map(|m| m.join("::")).collect();
            loops.push(format!("{} -> {}", cycle.join(" -> "), n.join("::")));
            return;
        }
        stack.push(n.clone());
        for m in edges.get(n).into_iter().flatten() {
            visit(m, edges, stack, done, loops);
        }
        stack.pop();
        done.insert(n.clone());
    }
    let mut loops = Vec::new();
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        visit(n, &edges, &mut Vec::new(), &mut done, &mut loops);
    }
    assert!(
        loops.is_empty(),
        "files that use each other in a loop:\n{}",
        loops.join("\n")
    );
}
