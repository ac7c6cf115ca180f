//! Compile-time behaviour of `#[subscriber]`: programs that must build, and mistakes that must
//! be reported at the user's tokens with a helpful message.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
