//! TEMPORARY bootstrap version; replaced by the real bucket.
#![allow(missing_docs, dead_code)]
use std::time::{Duration, Instant};
#[derive(Debug)]
pub struct Throttle;
#[derive(Debug)]
pub struct Permit;
#[derive(Debug)]
pub struct Stopped;
impl Permit {
    pub fn waited(&self) -> Duration {
        Duration::ZERO
    }
}
impl Throttle {
    pub fn new(_r: Option<u32>, _t: Option<u64>) -> Result<Throttle, crate::Error> {
        Ok(Throttle)
    }
    pub fn with_burst(self, _r: Option<u32>, _t: Option<u64>) -> Result<Throttle, crate::Error> {
        Ok(self)
    }
    pub fn unlimited() -> Throttle {
        Throttle
    }
    pub fn acquire(&self, _e: u64, _s: &dyn Fn() -> bool) -> Result<Permit, Stopped> {
        Ok(Permit)
    }
    pub fn settle(&self, _p: Permit, _a: u64) {}
    pub fn note_extra_requests(&self, _n: u32) {}
    pub fn pause_until(&self, _u: Instant) {}
    pub fn paused_until(&self) -> Option<Instant> {
        None
    }
    pub fn waiters(&self) -> usize {
        0
    }
    pub fn wake_all(&self) {}
}
pub(crate) fn estimate_tokens(prompt: &str) -> u64 {
    (prompt.len() as u64).div_ceil(4)
}
