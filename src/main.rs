//! The `zinf` command line: parses arguments and hands each subcommand to `zinf::cli`.
//! Nothing else lives here, so every command is reachable from tests through the library.
//! Exit status: 0 done, 2 bad input (clap's own for flags), 1 a failure while running, 130
//! interrupted (`zinf::cli::exit_code`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = zinf::cli::Cli::parse();
    zinf::cli::init_logging(cli.verbose);
    match zinf::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(zinf::cli::exit_code(&e))
        }
    }
}
