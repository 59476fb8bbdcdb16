// The release build links `ironcell` through scripts/link-ordered.sh, which
// reads link-order.txt: a change to that list must relink the binary.
fn main() {
    println!("cargo:rerun-if-changed=link-order.txt");
    println!("cargo:rerun-if-changed=../../scripts/link-ordered.sh");
}
