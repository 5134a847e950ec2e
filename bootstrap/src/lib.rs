//! blockwatch-launch: request a block of EC2 instances that join an AWS Batch
//! unmanaged compute environment by themselves (through blockwatch's tags),
//! with the block's end carried as a lease the agent enforces.

pub mod blocks;
pub mod cli;
pub mod inventory;
pub mod launch;
pub mod output;
pub mod plan;
