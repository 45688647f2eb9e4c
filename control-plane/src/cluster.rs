//! The composer: the API server, then the controllers and the scheduler on its objects.
//! (The HTTP server itself starts no controller, so either can run without the other.)

use std::future::Future;

use crate::apiserver::{RunningServer, ServerConfig, ServerError};
use crate::controllers::ControllerConfig;

/// Everything `skiff server` runs.
pub struct Config {
    pub server: ServerConfig,
    pub controllers: ControllerConfig,
}

/// Starts the API server and the control loops; serves until `shutdown` resolves.
pub async fn start(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunningServer, ServerError> {
    let server = crate::apiserver::start(config.server, shutdown).await?;
    let controllers = crate::controllers::ControllerConfig {
        api_endpoint: server.advertise,
        ..config.controllers
    };
    crate::controllers::spawn_all(server.objects.clone(), controllers);
    Ok(server)
}

/// Runs the control plane until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    start(config, shutdown).await?.wait().await;
    Ok(())
}
