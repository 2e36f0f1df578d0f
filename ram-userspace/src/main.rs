//! `ram`: the daemon and its command line. The library (`ram`) does the work; `cli/` parses
//! arguments and prints; errors become one `ram: error: …` line here, with their causes.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ram: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
