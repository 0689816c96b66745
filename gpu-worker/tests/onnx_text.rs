//! A transformer exported to ONNX and served from text: a tiny random
//! `BertForSequenceClassification` exported by `torch.onnx.export`, and its int8 copy from
//! ONNX Runtime's `quantize_dynamic` (`tools/python/make_onnx_text_fixtures.py`), loaded as
//! the worker loads folders and checked against the logits transformers (fp32) and ONNX
//! Runtime's Python build (int8) computed for the same prompts; then served over mutual-TLS
//! gRPC.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{
    TextExpected, Worker, check_text_fixture, softmax, text_expected,
    text_expected_from_onnx_runtime,
};
use inferencehub_proto::pb::{ModelKind, PredictRequest};
use inferencehub_worker::models::{LoadOptions, argmax, load_model};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx-text")
}

/// The folder held to `expected` (see [`check_text_fixture`]), loaded as an ONNX Runtime
/// text model.
fn check(name: &str, expected: TextExpected, alone: f32, batched: f32) -> TextExpected {
    let (model, expected) =
        check_text_fixture(&fixtures().join(name), name, expected, alone, batched);
    assert_eq!(model.info.kind(), ModelKind::Text);
    assert_eq!(
        model.info.architecture,
        "onnxruntime-bert-sequence-classification"
    );
    expected
}

#[test]
fn a_pytorch_export_answers_text_like_transformers() {
    let name = "bert-onnx";
    check(name, text_expected(&fixtures().join(name)), 1e-5, 1e-5);
}

/// Dynamic quantisation scales each activation by the range of the whole tensor, so an
/// input in a padded batch is quantised differently than alone (ONNX Runtime does the same
/// with the same batch): ONNX Runtime's own answer for one prompt, on this CPU, is matched
/// to 1e-5; in a batch within 5e-2, the size of the quantiser's own error here (the
/// quantised logits differ from transformers' fp32 ones by up to 0.07 where the CPU
/// multiplies int8 exactly, as where the fixture's were computed, and by up to 0.4 on AVX2
/// alone): the answers are held to ONNX Runtime's on this CPU, and to the fp32 model's
/// within 0.5 everywhere.
#[test]
fn its_int8_copy_answers_like_onnx_runtime_does() {
    let name = "bert-onnx-int8";
    let dir = fixtures().join(name);
    let here = text_expected_from_onnx_runtime(&dir);
    let here = check(name, here, 1e-5, 5e-2);
    // However the CPU multiplies, the quantised copy answers close to the fp32 model.
    let fp32 = text_expected(&fixtures().join("bert-onnx"));
    for (case, reference) in here.cases.iter().zip(&fp32.cases) {
        let worst = inferencehub_devkit::largest_error(
            case.logits
                .iter()
                .zip(&reference.logits)
                .map(|(a, b)| (a - b).abs()),
        );
        assert!(
            worst < 0.5,
            "{:?}: int8 {:?} vs fp32 {:?}",
            case.prompt,
            case.logits,
            reference.logits
        );
    }
}

#[test]
fn a_text_folder_whose_graph_does_not_take_token_ids_is_refused_naming_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("confused");
    std::fs::create_dir(&model).unwrap();
    let tabular = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/onnx/sklearn-random-forest/model.onnx");
    std::fs::copy(tabular, model.join("model.onnx")).unwrap();
    for file in ["tokenizer.json", "config.json"] {
        std::fs::copy(fixtures().join("bert-onnx").join(file), model.join(file)).unwrap();
    }
    let options = LoadOptions {
        device: candle_core::Device::Cpu,
        dtype: candle_core::DType::F32,
        max_prompt_bytes: 4096,
    };
    let err = match load_model(&model, "confused", &options) {
        Ok(_) => panic!("a float [batch, 13] graph cannot take token ids"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("confused") && err.contains("int64 or int32 [batch, sequence]"),
        "{err}"
    );
}

#[tokio::test]
async fn the_export_is_served_over_grpc_from_a_prompt() {
    let models = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(fixtures().join("bert-onnx"), models.path().join("bert")).unwrap();
    let worker = Worker::serving(models.path(), &["--max-wait", "1ms"]).await;
    let mut client = worker.client().await;
    let expected = text_expected(&fixtures().join("bert-onnx"));
    for case in &expected.cases {
        let answer = client
            .predict(PredictRequest {
                model_name: "bert".into(),
                prompt: case.prompt.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let want = softmax(&case.logits);
        let (best, p) = argmax(&want);
        assert_eq!(answer.label, ["negative", "neutral", "positive"][best]);
        assert!((answer.probability - p).abs() <= 1e-5, "{answer:?} vs {p}");
    }
}
