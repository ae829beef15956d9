//! The `tidewell` binary: parses the command line and hands over to [`tidewell::cli`].

fn main() -> std::process::ExitCode {
    tidewell::cli::main()
}
