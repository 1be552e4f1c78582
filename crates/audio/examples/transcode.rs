//! Transcodes one file to the outputs named on the command line from a single
//! decode and prints the manifest (with CPU time per stage): the benchmark's
//! counterpart to one ffmpeg command.
//!
//! Usage: transcode FILE OUT_DIR opus:96k,mp3:320k,flac

use std::path::Path;

use audio::ingest::{self, Plan};
use audio::request::{self, Request};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 4, "usage: transcode FILE OUT_DIR OUTPUTS");
    let outputs = request::parse_outputs(&args[3])?;
    let request = Request {
        outputs,
        ..Request::default()
    };
    let plan = Plan {
        targets: request.targets()?,
        ..Plan::default()
    };
    std::fs::create_dir_all(&args[2])?;
    let (manifest, _) = ingest::run(
        Path::new(&args[1]),
        &plan,
        &request,
        Some(Path::new(&args[2])),
    )?;
    println!("{}", serde_json::to_string(&manifest)?);
    Ok(())
}
