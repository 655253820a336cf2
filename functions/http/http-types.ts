/** The slice of API Gateway's REST proxy event and result the API uses (aws-lambda's types, narrowed). */
export interface HttpRequest {
  httpMethod: string;
  path: string;
  headers?: Record<string, string | undefined> | null;
  queryStringParameters?: Record<string, string | undefined> | null;
  body?: string | null;
  isBase64Encoded?: boolean;
  requestContext?: { requestId?: string };
}

export interface HttpResponse {
  statusCode: number;
  headers: Record<string, string>;
  body: string;
}
