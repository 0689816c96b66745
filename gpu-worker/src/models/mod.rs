//! The models the worker serves, one module per family (as candle-transformers lays them
//! out): [`bert`] (BERT, DistilBERT, RoBERTa, XLM-RoBERTa and sentence encoders, on the
//! CPU encoder or the tensor encoder), [`modernbert`], [`tabular`] (an MLP), [`onnx`]
//! (exported graphs). [`model`] is what they all implement; [`load`] reads a folder and
//! picks the family; [`text`] builds text classifiers from Hugging Face checkpoints.
//! Everything here runs on the CPU by default and on CUDA with the `cuda` feature.

pub mod bert;
pub mod device;
pub mod embedding;
pub mod hf_config;
pub mod load;
pub mod model;
pub mod modernbert;
pub mod onnx;
pub mod repository;
pub mod tabular;
pub mod text;
pub mod tokens;
pub mod wordpiece;

pub use load::{load_entry, load_model, version_of};
pub use model::{LoadOptions, LoadedModel, Model, ModelInput, Output, argmax};
