fn main() {
    // sqlx::migrate!("../migrations") embeds the files: rebuild when they change.
    println!("cargo:rerun-if-changed=../migrations");
}
