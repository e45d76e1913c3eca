//! The cookbook of claude-rayon (`docs/cookbook.md`): every recipe is a doc-test of this
//! package, compiled and, where it can run without a CLI, run on the simulator. The package's
//! dependencies are exactly those the page lists, so a recipe compiles here only with what a
//! reader who copies the page has. SQLite stays out of claude-rayon's own examples and tests.

#[cfg(doctest)]
#[doc = include_str!("../../../docs/cookbook.md")]
struct Cookbook;
