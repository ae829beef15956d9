//! `tidewell bench mqtt` (being written).

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {}

pub fn run(_args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
