"""The transport node: message intake over HTTPS and WebSocket, queues, delivery."""
