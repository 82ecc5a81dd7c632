//! `anjeon doctor`: what this machine and build can do.

use std::process::ExitCode;

use anjeon::pipeline::doctor;

pub fn run(json: bool) -> anyhow::Result<ExitCode> {
    let checks = doctor::checks();
    if json {
        anjeon::outln!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        anjeon::out!("{}", doctor::render(&checks));
    }
    let failed = checks.iter().any(|c| c.level == doctor::Level::Fail);
    Ok(if failed {
        ExitCode::from(super::exit::ENVIRONMENT)
    } else {
        ExitCode::SUCCESS
    })
}
