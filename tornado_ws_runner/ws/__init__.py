"""The client port: the WebSocketHandler, the message codec, connections and their send path."""
