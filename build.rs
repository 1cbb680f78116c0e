// Gives the C library a soname, so programs linked against an installed libnodeshm.so find it
// by name (with the usual loader rules) instead of by the path it was linked from.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnodeshm.so");
    println!("cargo:rerun-if-changed=build.rs");
}
