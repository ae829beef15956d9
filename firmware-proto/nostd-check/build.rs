//! Link flags for a freestanding binary on the host target.
//!
//! Passed from here, rather than through `.cargo/config.toml`, so they apply
//! whichever directory cargo runs from.
fn main() {
    // No C runtime start-up code: `_start` in `main.rs` is the entry point.
    println!("cargo:rustc-link-arg-bins=-nostartfiles");
    // rustc links no_std binaries with `-nodefaultlibs`. `memcpy`, `memset`
    // and `bcmp` come from libc here, as they would come from the vendor C
    // library or compiler-builtins' `mem` feature on a microcontroller. libc
    // does not provide Rust's std or alloc, so this does not weaken the check.
    println!("cargo:rustc-link-arg-bins=-lc");
}
