// An echo function for the nodejs*.x managed runtimes: answers the event it was given.
export const handler = async (event) => event;
