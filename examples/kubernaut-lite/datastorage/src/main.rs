//! `datastorage`: configured by environment variables only (see the README).

use kubernaut_lite_datastorage::{config::Config, log, run};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            log::event("invalid configuration", &[("error", &e.to_string())]);
            return ExitCode::from(2);
        }
    };
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::event("fatal", &[("error", &e.to_string())]);
            ExitCode::FAILURE
        }
    }
}
