//! Errors of the replicator.

use rdkafka::error::RDKafkaErrorCode;
use thiserror::Error;

/// Why an upstream session ended or could not start.
#[derive(Debug, Error, Clone)]
pub enum UpstreamError {
    #[error("upstream configuration: {0}")]
    Config(String),
    #[error("creating the Kafka client: {0}")]
    Client(String),
    #[error("remote topic {topic:?}: {message}")]
    Metadata { topic: String, message: String },
    #[error("remote topic {topic:?} does not exist (create it; Tidewell does not create topics)")]
    MissingTopic { topic: String },
    #[error("remote topic {topic:?} has {remote} partitions; local {local_topic}/{local_partition} needs partition {local_partition}")]
    TooFewPartitions {
        topic: String,
        remote: usize,
        local_topic: String,
        local_partition: u32,
    },
    #[error("not authorized: {0}")]
    Authorization(String),
    #[error("reading the tail of {topic}/{partition}: {message}")]
    Tail {
        topic: String,
        partition: i32,
        message: String,
    },
    #[error("delivery of {topic}/{partition} offset {offset} failed: {code}")]
    Delivery {
        topic: String,
        partition: u32,
        offset: u64,
        code: RDKafkaErrorCode,
    },
    #[error("fatal producer error: {0}")]
    Fatal(String),
}

impl UpstreamError {
    /// Errors that waiting a little will not fix: retried at the slow pace
    /// and reported loudly.
    pub fn is_slow(&self) -> bool {
        match self {
            UpstreamError::Config(_)
            | UpstreamError::MissingTopic { .. }
            | UpstreamError::TooFewPartitions { .. }
            | UpstreamError::Authorization(_) => true,
            UpstreamError::Delivery { code, .. } => is_authorization(*code) || is_missing(*code),
            _ => false,
        }
    }
}

pub fn is_authorization(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::Authentication
    )
}

pub fn is_missing(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownPartition
    )
}
