//! BERT-layout encoders and the heads on them. DistilBERT, RoBERTa and XLM-RoBERTa
//! checkpoints are renamed into BERT's layout ([`weights`]), so one encoder runs them all:
//! [`cpu`] (packed, fused, on the [`crate::kernels`]) on the CPU in f32, [`tensor`] (candle
//! tensor operations) on CUDA and in half precision; [`encoder`] picks one. The heads:
//! [`classifier`] (sequence classification) and [`sentence`] (mean pooling + linear head).

pub mod classifier;
pub mod cpu;
pub mod encoder;
pub mod sentence;
pub mod tensor;
pub mod weights;
