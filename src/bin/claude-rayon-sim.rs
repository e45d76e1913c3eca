//! The built-in simulator of the `claude` CLI as a program of its own, for tests and for
//! pointing `CLAUDE_CODE_BIN` at when trying the library without an API key.

fn main() {
    std::process::exit(claude_rayon::simulator::run());
}
