-- wrk script for scripts/post_floor_app.py: POST a ~350 B JSON event.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"topic":"order.placed","correlation_id":"01JC0RRE1AT10N00000000000A","payload":{"order_id":"ord-000001234","customer_id":"cus-000042","amount_cents":12345,"currency":"EUR","items":[{"sku":"sku-0001","qty":1},{"sku":"sku-0002","qty":2},{"sku":"sku-0003","qty":3}],"note":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}'
