"""The DynamoDB gateway's pure pieces: expressions and PartiQL statements read into what they touch."""
