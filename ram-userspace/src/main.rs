//! `ram`: the daemon and its command line. The library (`ram`) does the work; `cli/` parses
//! arguments and prints; errors become one `ram: error: …` line here, with their causes.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    logger.format_target(false);
    if ram::daemon::notify::stderr_is_journal() {
        // Under systemd: the priority as a `<N>` prefix; the journal adds the time.
        logger.format(|out, record| {
            use std::io::Write as _;
            let priority = ram::daemon::notify::journal_priority(record.level());
            writeln!(out, "<{priority}>{}", record.args())
        });
    }
    logger.init();
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ram: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
