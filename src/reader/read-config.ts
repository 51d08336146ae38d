import { readJsonObjectFile } from '../util/json-file.js';
import { ConfigReader } from './config.js';

export function readConfigFile(path: string): ConfigReader {
  return new ConfigReader(readJsonObjectFile(path), path);
}
