//! Unit tests' one rule for a missing precondition (a tool, root): in the test command
//! (`RIVET_REQUIRE_ALL=1`) and in CI (`CI=true`) it fails the test, so a green run means the
//! test ran; anywhere else the test is skipped with a line printed past the harness's output
//! capture (the same rule as `tests/common`'s).

/// `true` when the test should return now because `reason` holds; panics when skipping is not
/// allowed.
pub fn skipped(reason: &str) -> bool {
    use std::io::Write as _;
    let required = std::env::var("RIVET_REQUIRE_ALL").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    assert!(
        !required,
        "precondition missing where every test must run: {reason}"
    );
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {reason}");
    true
}
