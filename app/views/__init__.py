"""HTTP views, one module per resource. Each parses the request, calls one service and
shapes the response; what an operation means lives in app.registry."""
