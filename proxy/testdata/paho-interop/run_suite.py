# Runs the Paho MQTT 3.1.1 client interoperability tests (client_test.py,
# unmodified) against one server, every CONNECT carrying a user name and
# password, and writes each test's outcome as JSON (tests only):
#
#   python3 -B run_suite.py --host H --port P [--username U] [--password TOKEN]
#       [--skip TEST ...] --results FILE [TEST ...]
#
# client_test.py's own main cannot be used: its options reach unittest,
# which refuses them, so the server would always be localhost:1883. This
# sets the module globals that main would set (same values), and passes
# the credentials through the client's connect keywords, which
# client_test.py leaves unset. It runs the TESTs named, or all but those
# skipped (test method names, such as test_keepalive). FILE gets {"TEST": "pass"|"fail"|"error"},
# one entry per test run; the exit status is 0 whatever the tests' outcome.
import argparse
import json
import logging
import sys
import unittest

import client_test
import mqtt.clients.V311 as mqtt_client


def with_credentials(connect, username, password):
    def connect_with_credentials(self, *args, **kwargs):
        kwargs.setdefault("username", username)
        kwargs.setdefault("password", password)
        return connect(self, *args, **kwargs)
    return connect_with_credentials


class RecordingResult(unittest.TextTestResult):
    outcomes = {}

    def addSuccess(self, test):
        super().addSuccess(test)
        self.outcomes[test._testMethodName] = "pass"

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.outcomes[test._testMethodName] = "fail"

    def addError(self, test, err):
        super().addError(test, err)
        # An error in setUpClass is reported against a placeholder, not a
        # test: every test of the class is then missing from the results.
        self.outcomes[getattr(test, "_testMethodName", str(test))] = "error"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument("--skip", action="append", default=[])
    parser.add_argument("--results", required=True)
    parser.add_argument("tests", nargs="*")
    args = parser.parse_args()

    # As client_test.py's main sets them.
    client_test.host, client_test.port = args.host, args.port
    client_test.topics = ("TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA")
    client_test.wildtopics = ("TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#")
    client_test.nosubscribe_topics = ("test/nosubscribe",)
    logging.getLogger().setLevel(logging.ERROR)

    password = args.password.encode("utf-8") if args.password else None
    mqtt_client.Client.connect = with_credentials(mqtt_client.Client.connect, args.username, password)

    available = unittest.TestLoader().getTestCaseNames(client_test.Test)
    unknown = set(args.tests + args.skip) - set(available)
    if unknown:
        sys.exit("no such test: %s" % ", ".join(sorted(unknown)))
    names = [n for n in (args.tests or available) if n not in args.skip]
    suite = unittest.TestSuite(client_test.Test(n) for n in names)
    runner = unittest.TextTestRunner(stream=sys.stdout, verbosity=2, resultclass=RecordingResult)
    runner.run(suite)
    with open(args.results, "w") as f:
        json.dump(RecordingResult.outcomes, f)


if __name__ == "__main__":
    main()
