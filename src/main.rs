//! The `warren` binary: everything is in the library (`src/app.rs`), so
//! that the library exports nothing else.

fn main() -> std::process::ExitCode {
    warren::main()
}
