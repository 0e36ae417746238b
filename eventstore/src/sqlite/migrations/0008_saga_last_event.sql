ALTER TABLE {sagas} ADD COLUMN last_event_id BLOB;
