//! Generates the agent protocol's messages and its ttrpc client and server
//! (synchronous) from proto/agent.proto, in pure Rust (no protoc).

use std::fs;
use std::path::PathBuf;

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    println!("cargo:rerun-if-changed=proto/agent.proto");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("sync");
    fs::create_dir_all(&out).unwrap();
    Codegen::new()
        .input("proto/agent.proto")
        .include("proto")
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().generate_accessors(true))
        .customize(Customize::default())
        .out_dir(&out)
        .run()
        .expect("generating the agent protocol");
    // `include!` cannot take a file with inner attributes or inner doc
    // comments: the generated files start with some.
    for entry in fs::read_dir(&out).unwrap() {
        let path = entry.unwrap().path();
        let text = fs::read_to_string(&path).unwrap();
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
            .collect();
        fs::write(&path, kept.join("\n")).unwrap();
    }
}
