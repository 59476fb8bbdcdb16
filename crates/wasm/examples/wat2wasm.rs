//! `wat2wasm IN.wat OUT.wasm`: compiles WebAssembly text to binary with the
//! `wat` crate (for benchmarks and hand checks; the tests call `wat`
//! directly). Debian 12's `wabt` would do the same; this needs nothing more.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        eprintln!("usage: wat2wasm IN.wat OUT.wasm");
        std::process::exit(2);
    };
    let bytes = match wat::parse_file(input) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("wat2wasm: {input}: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = std::fs::write(output, bytes) {
        eprintln!("wat2wasm: {output}: {e}");
        std::process::exit(1);
    }
}
