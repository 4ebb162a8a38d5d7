//! `tokenlens`: command-line entry point. Every subcommand goes through `tokenlens::session`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
