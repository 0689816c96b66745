//! The `ModelRepository` gRPC service: the repository's index (every version with its
//! state and, for one that failed to load, why) and, with `--model-control explicit`,
//! loading and unloading models on demand. Only admin client certificates reach it
//! ([`crate::tls::require_admin_role`]).

use std::sync::{Arc, OnceLock};

use inferencehub_proto::pb::model_repository_server::ModelRepository;
use inferencehub_proto::pb::{
    LoadModelRequest, LoadModelResponse, ModelInfo, RepositoryIndexRequest,
    RepositoryIndexResponse, UnloadModelRequest, UnloadModelResponse,
};
use inferencehub_proto::{ErrorKind, FieldError};
use tonic::{Request, Response, Status};

use crate::registry::Control;
use crate::service::{ModelStore, index};

/// The admin service; its control is set once the start's load is done.
#[derive(Clone)]
pub struct AdminService {
    store: Arc<ModelStore>,
    control: Arc<OnceLock<Arc<Control>>>,
    explicit: bool,
}

impl AdminService {
    /// A service over `store`; `explicit` allows LoadModel and UnloadModel.
    pub fn new(
        store: Arc<ModelStore>,
        control: Arc<OnceLock<Arc<Control>>>,
        explicit: bool,
    ) -> Self {
        Self {
            store,
            control,
            explicit,
        }
    }

    /// The control, when `explicit` and the models have loaded.
    fn control(&self) -> Result<&Arc<Control>, Status> {
        if !self.explicit {
            return Err(Status::failed_precondition(
                "the worker runs without --model-control explicit: LoadModel and UnloadModel are off",
            ));
        }
        self.control
            .get()
            .ok_or_else(|| ErrorKind::Unavailable.status("models are still loading"))
    }

    fn versions(&self, name: &str) -> Vec<ModelInfo> {
        index(&self.store, "READY")
            .into_iter()
            .filter(|m| m.name == name)
            .collect()
    }
}

fn model_name(name: &str) -> Result<&str, Status> {
    if name.is_empty() {
        return Err(FieldError::new("model_name", "is required").to_status());
    }
    Ok(name)
}

#[tonic::async_trait]
impl ModelRepository for AdminService {
    async fn repository_index(
        &self,
        _request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let unloaded = match self.control.get() {
            Some(control) => control.unloaded().await,
            None => Vec::new(),
        };
        Ok(Response::new(RepositoryIndexResponse {
            models: index(&self.store, "READY"),
            unloaded,
        }))
    }

    async fn load_model(
        &self,
        request: Request<LoadModelRequest>,
    ) -> Result<Response<LoadModelResponse>, Status> {
        let name = model_name(&request.get_ref().model_name)?.to_string();
        let control = self.control()?;
        control.load(&name).await.map_err(|e| {
            tracing::warn!(model = %name, error = format!("{e:#}"), "LoadModel failed");
            ErrorKind::Unavailable.status(format!("reading the repository failed: {e:#}"))
        })?;
        let versions = self.versions(&name);
        if versions.is_empty() {
            return Err(ErrorKind::NotFound.status(format!(
                "the repository has no model {:?}",
                name.chars().take(64).collect::<String>()
            )));
        }
        Ok(Response::new(LoadModelResponse { versions }))
    }

    async fn unload_model(
        &self,
        request: Request<UnloadModelRequest>,
    ) -> Result<Response<UnloadModelResponse>, Status> {
        let name = model_name(&request.get_ref().model_name)?.to_string();
        if !self.control()?.unload(&name).await {
            return Err(ErrorKind::NotFound.status(format!(
                "no model named {:?} is served",
                name.chars().take(64).collect::<String>()
            )));
        }
        Ok(Response::new(UnloadModelResponse {}))
    }
}
