//! Embeds an rpath to libtorch so the binary runs without LD_LIBRARY_PATH.
//!
//! Two entries: the libtorch folder this was built against (local runs, tests, benches), and
//! `$ORIGIN/../lib` so a relocated install (`bin/lstm-forecast` + `lib/*.so`, as in the container
//! image) finds its own copy.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib");
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        let lib = PathBuf::from(libtorch).join("lib");
        // Resolve the .libtorch symlink so the rpath survives the clone being moved or deleted.
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
