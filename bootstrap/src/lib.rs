//! blockwatch-launch: request a block of EC2 instances that join an AWS Batch
//! unmanaged compute environment by themselves (through blockwatch's tags),
//! with the block's end carried as a lease the agent enforces.
//!
//! One module per subcommand (`launch`, `list`, `extend`); `inventory` is
//! what `list` and `extend` read from AWS, `blocks` their pure rules.

pub mod aws;
pub mod blocks;
pub mod cli;
pub mod exit;
pub mod extend;
pub mod interrupt;
pub mod inventory;
pub mod launch;
pub mod list;
pub mod logging;
pub mod output;
pub mod plan;
