//! Sets `cfg(as_root)` when the tests are built as root: the tests that make network
//! namespaces (`immutant_e2e::netns`) need root, and are marked
//! `#[cfg_attr(not(as_root), ignore = "needs root to make network namespaces")]`, so that
//! elsewhere the test runner counts them as ignored rather than as passed, and as root they
//! run (and fail if they cannot make a namespace).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(as_root)");
    // Built again when another user builds (a user switch changes these).
    println!("cargo::rerun-if-env-changed=USER");
    println!("cargo::rerun-if-env-changed=HOME");
    println!("cargo::rerun-if-changed=build.rs");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        println!("cargo::rustc-cfg=as_root");
    }
}
