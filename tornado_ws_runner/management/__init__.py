"""The management port: its RequestHandlers, their rules, and the postback client."""
