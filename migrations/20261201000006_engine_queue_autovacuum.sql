-- The queue tables churn: every task inserts and deletes a queue item, a runtime row and
-- sometimes a retry item. With the default thresholds (20 % of the table) autovacuum waits
-- too long on a table that is usually near empty and bursts to 100,000 rows; vacuum them
-- after a fixed number of dead rows instead, and without the cost delay.
ALTER TABLE engine.queue_item SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
                                   autovacuum_vacuum_cost_delay = 0, autovacuum_analyze_scale_factor = 0,
                                   autovacuum_analyze_threshold = 5000);
ALTER TABLE engine.task_runtime SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
                                     autovacuum_vacuum_cost_delay = 0);
ALTER TABLE engine.retry_queue_item SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
                                         autovacuum_vacuum_cost_delay = 0);
