//! The cookbook of claude-rayon (`docs/cookbook.md`): every recipe is a doc-test of this
//! package, compiled and, where it can run without a CLI, run on the simulator. The recipes
//! live in a package of their own because one of them stores into SQLite, and SQLite should
//! not be compiled for claude-rayon's own examples and tests.

#[cfg(doctest)]
#[doc = include_str!("../../../docs/cookbook.md")]
struct Cookbook;
