"""AWS services of idgate: the STS credential broker (boto3 lives only in proxy.aws.sts) and the
pure pieces around it (credential data, session naming)."""
