"""An echo function for the python3.x managed runtimes: answers the event it was given."""


def handler(event, context):
    return event
