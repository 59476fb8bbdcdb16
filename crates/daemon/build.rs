//! Generates containerd's sandbox controller API
//! (`proto/`, see its README) for `src/controller.rs`.

fn main() {
    let files = [
        "proto/github.com/containerd/containerd/api/services/sandbox/v1/sandbox.proto",
        "proto/github.com/containerd/containerd/api/types/sandbox.proto",
        "proto/github.com/containerd/containerd/api/types/mount.proto",
        "proto/github.com/containerd/containerd/api/types/platform.proto",
        "proto/github.com/containerd/containerd/api/types/metrics.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    // The client is for the tests (tests/requests.rs) and tools; the
    // linker drops it from the daemon.
    tonic_prost_build::configure()
        .build_client(true)
        .build_transport(false)
        .build_server(true)
        .compile_protos(&files, &["proto"])
        .expect("cannot generate containerd's sandbox controller API (is protoc installed?)");
}
