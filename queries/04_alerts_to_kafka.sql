-- Route the download alerts (queries/02_download_health.sql) back to Kafka: one JSON
-- message per alert on topic 'download-alerts', keyed by region.
CREATE SINK download_alerts_kafka FROM download_alerts WITH (
    connector = 'kafka',
    topic = 'download-alerts',
    format = 'json',
    key = 'region'
);
