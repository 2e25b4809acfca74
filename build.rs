//! Embeds an rpath to libtorch, and to ONNX Runtime's library, so the binary runs without
//! LD_LIBRARY_PATH.
//!
//! Entries: the libtorch and ONNX Runtime folders this was built against (local runs, tests,
//! benches), and `$ORIGIN/../lib` so a relocated install (`bin/lstm-forecast` + `lib/*.so`, as in
//! the container image) finds its own copies. libonnxruntime.so is opened with dlopen at run time
//! (src/model/onnx.rs), which searches the executable's rpath too.
use std::path::PathBuf;

fn main() {
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib");
    for variable in ["LIBTORCH", "ONNXRUNTIME"] {
        println!("cargo:rerun-if-env-changed={variable}");
        if let Ok(folder) = std::env::var(variable) {
            let lib = PathBuf::from(folder).join("lib");
            // Resolve the symlink (.libtorch, .onnxruntime) so the rpath survives the clone
            // being moved or deleted.
            let lib = lib.canonicalize().unwrap_or(lib);
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        }
    }
}
