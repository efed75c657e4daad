//! Skiff's builder: turns a pushed commit into a slug.
//!
//! The flow reads top to bottom: [`git`] receives the push over smart HTTP and its
//! `pre-receive` hook hands the commit's tree to the platform; [`pipeline`] runs the
//! buildpacks (detect, compile, release) over it with Heroku's buildpack API; [`inspect`]
//! checks that each process type names a real WebAssembly component; [`slug`] packs the result
//! into a content-addressed archive. [`adapt`] turns WASI preview 1 modules (Go, C) into
//! components on the way.

pub mod adapt;
pub mod buildpack;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod git;
pub mod inspect;
pub mod pipeline;
pub mod slug;

pub use buildpack::{Buildpack, builtin_buildpacks, detects, install_builtin_buildpacks};
pub use pipeline::{BuildError, BuildLog, BuildRequest, Builder, BuiltSlug};
pub use slug::{SlugError, SlugStore};
