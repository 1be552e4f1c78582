//! Runs the full ingest analysis (no transcodes, no picture) on each file and
//! prints one manifest per line: the benchmark's entry point, usable before
//! the `chorus` binary exists and without its start-up cost.

use std::path::Path;

use audio::ingest::{self, Plan};
use audio::request::Request;

fn main() -> anyhow::Result<()> {
    let request = Request::default();
    let plan = Plan::everything(Vec::new());
    for arg in std::env::args().skip(1) {
        let started = std::time::Instant::now();
        match ingest::run(Path::new(&arg), &plan, &request, None) {
            Ok((mut manifest, _)) => {
                manifest
                    .timings_ms
                    .insert("total", started.elapsed().as_secs_f64() * 1000.0);
                if let Some(w) = manifest.waveform.as_mut() {
                    w.peaks.clear();
                }
                println!("{}", serde_json::to_string(&manifest)?);
            }
            Err(err) => println!(
                "{}",
                serde_json::json!({"source": arg, "error": err.code(), "message": err.to_string()})
            ),
        }
    }
    Ok(())
}
